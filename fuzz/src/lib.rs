//! LibAFL fuzzing of code inside Xen guests (see issue: fuzz).
