//! The VMM core.
