"""The wallet page, the transaction history and its CSV export."""
