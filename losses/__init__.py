"""Loss heads and losses for margin-based and metric learning."""
