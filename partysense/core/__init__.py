"""What every layer shares: a change, channel names, close codes, the hub,
bounded logs and budgets."""
