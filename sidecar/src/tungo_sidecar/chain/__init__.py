"""Pure routing decisions: which path (chain or direct) a flow takes, which node of a hop is used."""
