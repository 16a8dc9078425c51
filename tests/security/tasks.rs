//! Security suite: tasks cases (filled in by issue 15's work).
