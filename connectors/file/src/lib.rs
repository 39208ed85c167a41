//! file sink
