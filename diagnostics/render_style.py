"""The style sheet of report.html: plain CSS, inlined in the page (no network, no script).

Layout rules that keep the page readable at any width: plots in a grid whose columns
shrink to the window, images never wider than their box, tables in boxes that scroll
sideways on their own, long names allowed to wrap.
"""

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232b;
background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:1.2em 1.4em 3em}
header{border-bottom:1px solid #d8dde3;margin-bottom:.6em}
.kicker{margin:0;color:#5b6675;font-size:13px;text-transform:uppercase;letter-spacing:.06em}
h1{margin:.1em 0 .4em;font-size:28px;overflow-wrap:anywhere}
h2{margin:1.6em 0 .3em;font-size:21px;border-bottom:1px solid #d8dde3;padding-bottom:.2em}
h3{margin:1.2em 0 .4em;font-size:16px}
.facts{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.15em 1em;
margin:0 0 1em;font-size:14px}
.facts div{display:contents}.facts dt{color:#5b6675}
.facts dd{margin:0;overflow-wrap:anywhere;min-width:0}
nav{font-size:14px;margin:.4em 0 0}nav a{margin-right:1em;color:#235a97;white-space:nowrap}
.lead{color:#3d4754;margin:.2em 0 .8em}.muted{color:#5b6675;font-size:13px}
.rec{background:#fff;border:1px solid #d8dde3;border-left:6px solid #235a97;border-radius:4px;
padding:.6em 1em;margin:.7em 0}
.rec.error{border-left-color:#b00020}.rec.warning{border-left-color:#c27400}
.rec p{margin:.4em 0}.rec-head{font-size:16px}
.sev{text-transform:uppercase;font-size:12px;font-weight:700;letter-spacing:.05em;
padding:.1em .5em;border-radius:3px;background:#235a97;color:#fff}
.error .sev{background:#b00020}.warning .sev{background:#c27400}
.suggested{margin-left:.6em;font-weight:600}code{font-size:.95em;overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(175px,1fr));gap:.5em;
margin:.6em 0}
.card{background:#fff;border:1px solid #d8dde3;border-radius:4px;padding:.4em .7em;min-width:0}
.card .name{font-size:12.5px;color:#3d4754;overflow-wrap:anywhere}
.card .value{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums}
.card .iv,.card .note{font-size:12px;color:#5b6675;overflow-wrap:anywhere}
.dir{color:#2c7a3f;font-weight:700}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,440px),1fr));
gap:1em;margin:.8em 0;align-items:start}
figure.plot{margin:0;background:#fff;border:1px solid #d8dde3;border-radius:4px;padding:.5em;
min-width:0}
figure.plot img{display:block;max-width:100%;height:auto;margin:0 auto}
.plots>figure{margin:0;min-width:0}main img{max-width:100%;height:auto}
figcaption{font-size:13px;color:#3d4754;margin-top:.4em}
.scroll{max-width:100%;overflow-x:auto;margin:.4em 0}
table{border-collapse:collapse;font-size:13px;background:#fff}
td,th{border:1px solid #d8dde3;padding:3px 8px;text-align:left;vertical-align:middle}
th{background:#eef1f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.evidence td:first-child{white-space:nowrap}
img.thumb{width:48px;height:48px;object-fit:contain;image-rendering:pixelated;display:block}
details{margin:.3em 0}summary{cursor:pointer;font-weight:600;padding:.2em 0}
footer{margin-top:2em}
"""
