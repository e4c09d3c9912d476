//! Trace simulator (filled in below).
