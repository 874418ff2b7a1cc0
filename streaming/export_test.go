package streaming

// SetReorderHold lowers how many out-of-order events h holds (tests).
func SetReorderHold(h *History, n int) { h.hold = n }
