"""Money out: teachers' payout methods and withdrawals, and the rails that pay them."""
