//go:build !unix

package streaming

import "os"

// lockFile is a no-op where flock is unavailable: do not point two
// processes at one spool directory there.
func lockFile(*os.File) error { return nil }

func unlockFile(*os.File) {}
