package expr

import (
	"fmt"
	"sync"
)

// Cache compiles each distinct (source, Vars) pair once and hands out the
// same *Program (or compile error) afterwards. The zero value is ready to
// use and it is safe for concurrent use. Entries are never evicted, so a
// Cache is meant for expressions that come from code or configuration, not
// for arbitrary user input.
type Cache struct {
	mu      sync.Mutex
	entries map[cacheKey]*cacheEntry
}

type cacheKey struct {
	src  string
	vars Vars
}

type cacheEntry struct {
	once sync.Once
	prg  *Program
	err  error
}

// Compile returns the compiled program for src and vars, compiling it on
// first use. Concurrent first uses of the same pair compile only once.
func (c *Cache) Compile(src string, vars Vars) (*Program, error) {
	key := cacheKey{src: src, vars: vars}
	c.mu.Lock()
	e, ok := c.entries[key]
	if !ok {
		if c.entries == nil {
			c.entries = make(map[cacheKey]*cacheEntry)
		}
		e = &cacheEntry{}
		c.entries[key] = e
	}
	c.mu.Unlock()
	e.once.Do(func() {
		defer func() {
			if r := recover(); r != nil {
				e.prg, e.err = nil, fmt.Errorf("expr: compiling %q: panic: %v", src, r)
			}
		}()
		e.prg, e.err = Compile(src, vars)
	})
	return e.prg, e.err
}
