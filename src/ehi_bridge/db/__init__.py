"""Database plumbing shared by every feature: declarative base, engines, sessions, migrations."""
