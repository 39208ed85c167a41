//! Redis sink (to be written).
