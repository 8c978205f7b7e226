"""Alerts: SMS texts, the outbox sender and its notifiers.

Kept free of imports on purpose: the journal imports `bot.alerts.texts`, and only
`bot.alerts.twilio_sms` may load the Twilio SDK (see `bot.alerts.outbox` for the sender).
"""
