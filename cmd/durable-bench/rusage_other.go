//go:build !unix

package main

import "time"

// processCPU returns -1: the process's CPU time is not read on this
// platform.
func processCPU() time.Duration { return -1 }
