//! journal -> **metrics**: the daemon's Prometheus text exposition.
