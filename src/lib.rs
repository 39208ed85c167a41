//! pgfanout daemon.
