//! Reading journals back: streaming, several files (rotated, several hosts)
//! merged; a torn last line is counted, never fatal.
