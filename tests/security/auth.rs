//! Security suite: auth cases (filled in by issue 15's work).
