"""Notifications: an outbox written with the transitions, fanned out to webhooks and Apprise targets."""
