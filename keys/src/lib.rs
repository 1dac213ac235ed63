//! ota-keys (placeholder until its issue lands).
