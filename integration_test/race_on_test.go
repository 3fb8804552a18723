//go:build race

package integration_test

// raceEnabled: the tests are built with -race, and so is the worker.
const raceEnabled = true
