"""The Board's tabs: train (forms from describe()), monitor, chat, evaluate/export."""
