"""Memory: every turn stored durably (MongoDB wire protocol), context for the next turn, history, forget."""
