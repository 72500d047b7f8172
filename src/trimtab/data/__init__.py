"""Records, loading, chat formatting with response-only loss, mixing and collation."""
