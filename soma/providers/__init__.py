"""Payment providers: clients that know nothing of purchases or payouts, and the event inbox.

- `stripe`: the configured Stripe client and webhook verification;
- `stripe_connect`: payouts through Stripe Connect (accounts, onboarding, transfers) and
  the readers of the Connect webhook's events;
- `daraja`: our client of Safaricom's Daraja API (OAuth, STK push and query; B2C payouts,
  the Transaction Status query, and the readers of their callbacks);
- `sandbox`: the stand-in provider for development and tests;
- `inbox`: the one place a provider's event is recorded once, with its raw body.

Domains (`soma.purchases`, later `soma.payouts`) import these; nothing here imports a domain.
"""
