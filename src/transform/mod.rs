//! transform: hashing and leakage splits, colour filters, Pick-a-Filter (not built yet).
