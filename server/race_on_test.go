//go:build race

package server_test

// raceEnabled reports a -race build (timings are slower under it).
const raceEnabled = true
