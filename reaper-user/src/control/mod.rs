//! ledger -> **control**: the daemon's Unix socket, answering `who`, `ports`
//! and recent conflicts for root peers only.
