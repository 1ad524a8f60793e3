"""Buying tokens: packages and custom amounts, providers, and fulfilment through the ledger."""
