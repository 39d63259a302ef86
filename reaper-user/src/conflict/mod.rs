//! holders -> **conflict** -> policy.
//!
//! A failed bind joined with who holds the port now (the ledger's claim,
//! verified against the live system), grouped so that a burst of failures
//! for one port is one conflict with a count.
