"""Peewee models, database binding, migrations, the outbox and the store functions."""
