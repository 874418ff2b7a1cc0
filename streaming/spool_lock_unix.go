//go:build unix

package streaming

import (
	"os"
	"syscall"
)

// lockFile takes an exclusive, non-blocking flock on f: two publishers (two
// kgentsd processes on one data directory) must never share a spool.
func lockFile(f *os.File) error {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
}

func unlockFile(f *os.File) { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }
