//! Security suite: limits cases (filled in by issue 15's work).
