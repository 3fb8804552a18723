// Command durable inspects and operates pgdurable from a terminal: it
// migrates the schema, lists and shows runs (with a step timeline drawn in
// the terminal), cancels and reruns them, sends events, lists functions and
// serves the run browser.
//
// Usage:
//
//	durable [--database-url URL] [--schema NAME] COMMAND [ARGS] [--json]
//
//	durable migrate up|down|sql
//	durable runs list [--function F] [--status S] [--since DURATION] [--if CEL] [--limit N] [--cursor C]
//	durable runs show ID
//	durable runs cancel ID
//	durable runs rerun ID [--from-step STEP]
//	durable events send NAME [--data JSON] [--id ID]
//	durable functions list
//	durable ui [--addr :8080]
//
// Global flags come before the command: --database-url (default
// $DATABASE_URL; when neither is set, the local server
// postgres://postgres@127.0.0.1:5432/postgres, with a note on stderr) and
// --schema (default "durable"). Every command takes --json (after the
// command) to print one JSON document instead of a table.
//
// Exit status: 0 on success, 1 on a runtime error (the database, an
// unknown run), 2 on a usage error (an unknown command or flag, a missing
// argument, malformed --data, --since or --if). Errors go to stderr, naming
// the command: "durable: runs show: run "x" not found".
//
// Run it with go run github.com/pgdurable/durable/cmd/durable.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/pgdurable/durable/internal/pgident"
)

// Exit statuses.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// app is one invocation of the command: its global flags and streams.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	databaseURL    string
	// urlSource says where databaseURL came from ("--database-url",
	// "DATABASE_URL" or "" for the built-in default), for error messages.
	urlSource string
	schema    string
	json      bool
}

// cmd is a command that does something (a leaf: "runs list").
type cmd struct {
	path     string // e.g. "runs list"
	synopsis string // arguments after the path, e.g. "ID [--from-step STEP]"
	summary  string
	// run defines the command's flags on c.fs, parses them (c.parse) and
	// does the work.
	run func(ctx context.Context, c *call) error
}

// positionals lists the command's positional arguments: the words of its
// synopsis outside brackets.
func (c *cmd) positionals() []string {
	var out []string
	depth := 0
	for _, w := range strings.Fields(c.synopsis) {
		depth += strings.Count(w, "[")
		if depth == 0 {
			out = append(out, w)
		}
		depth -= strings.Count(w, "]")
	}
	return out
}

// short is the command's path and positional arguments, with "[flags]"
// when it has optional ones: what the overview shows.
func (c *cmd) short() string {
	s := strings.Join(append([]string{c.path}, c.positionals()...), " ")
	if strings.Contains(c.synopsis, "[") {
		s += " [flags]"
	}
	return s
}

// group is a noun and its verbs ("runs" and list, show, ...), or a
// command of its own ("ui").
type group struct {
	name    string
	summary string
	verbs   []*cmd
	self    *cmd // a command without verbs
}

// groups lists the commands, in the order help shows them.
var groups = []*group{
	{name: "migrate", summary: "create, drop or print the schema's tables", verbs: migrateCmds},
	{name: "runs", summary: "list, show, cancel and rerun runs", verbs: runsCmds},
	{name: "events", summary: "send events", verbs: eventsCmds},
	{name: "functions", summary: "list the registered functions and their processes", verbs: functionsCmds},
	{name: "ui", summary: "serve the run browser", self: uiCmd},
}

// usageError is an error in the command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// errHelp is returned when help was asked for and printed: exit status 0.
var errHelp = errors.New("help printed")

// run runs the command line args and returns the exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	global := flag.NewFlagSet("durable", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	global.Usage = func() {}
	global.StringVar(&a.databaseURL, "database-url", "", "Postgres URL (default $DATABASE_URL)")
	global.StringVar(&a.schema, "schema", pgident.DefaultSchema, "Postgres schema of pgdurable's and River's tables")
	global.BoolVar(&a.json, "json", false, "print JSON (also accepted after the command)")
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.mainUsage(stdout)
			return exitOK
		}
		fmt.Fprintf(stderr, "durable: %v\nRun 'durable --help' for usage.\n", err)
		return exitUsage
	}
	rest := global.Args()
	if len(rest) == 0 {
		a.mainUsage(stderr)
		return exitUsage
	}
	if a.databaseURL != "" {
		a.urlSource = "--database-url"
	} else if u := strings.TrimSpace(os.Getenv("DATABASE_URL")); u != "" {
		a.databaseURL, a.urlSource = u, "DATABASE_URL"
	}

	if rest[0] == "help" {
		return a.help(rest[1:])
	}
	g := findGroup(rest[0])
	if g == nil {
		fmt.Fprintf(stderr, "durable: unknown command %q\nRun 'durable --help' for usage.\n", rest[0])
		return exitUsage
	}
	c, cargs, code := a.resolve(g, rest[1:])
	if c == nil {
		return code
	}
	if _, err := pgident.Schema(a.schema); err != nil {
		fmt.Fprintf(stderr, "durable: --schema: %v\n", err)
		return exitUsage
	}
	return a.exec(ctx, c, cargs)
}

// resolve finds the command a group's arguments name. It returns nil and
// the exit status when it printed help or an error instead.
func (a *app) resolve(g *group, args []string) (*cmd, []string, int) {
	if g.self != nil {
		return g.self, args, exitOK
	}
	if len(args) == 0 {
		fmt.Fprintf(a.stderr, "durable: %s: missing command\n", g.name)
		a.groupUsage(a.stderr, g)
		return nil, nil, exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		a.groupUsage(a.stdout, g)
		return nil, nil, exitOK
	}
	for _, c := range g.verbs {
		if c.path == g.name+" "+args[0] {
			return c, args[1:], exitOK
		}
	}
	fmt.Fprintf(a.stderr, "durable: %s: unknown command %q\n", g.name, args[0])
	a.groupUsage(a.stderr, g)
	return nil, nil, exitUsage
}

// exec runs a command and turns its error into a message and an exit
// status.
func (a *app) exec(ctx context.Context, c *cmd, args []string) int {
	fs := flag.NewFlagSet("durable "+c.path, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.BoolVar(&a.json, "json", a.json, "print JSON instead of a table")
	err := c.run(ctx, &call{app: a, cmd: c, fs: fs, args: args})
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(a.stderr, "durable: %s: %s\nRun 'durable %s --help' for usage.\n", c.path, ue.msg, c.path)
		return exitUsage
	default:
		fmt.Fprintf(a.stderr, "durable: %s: %s\n", c.path, a.message(err))
		return exitRuntime
	}
}

// help answers "durable help [COMMAND...]".
func (a *app) help(args []string) int {
	if len(args) == 0 {
		a.mainUsage(a.stdout)
		return exitOK
	}
	g := findGroup(args[0])
	if g == nil {
		fmt.Fprintf(a.stderr, "durable: help: unknown command %q\n", args[0])
		return exitUsage
	}
	if g.self != nil || len(args) > 1 {
		rest := []string{"--help"}
		if g.self == nil {
			rest = []string{args[1], "--help"}
		}
		c, cargs, code := a.resolve(g, rest)
		if c == nil {
			return code
		}
		return a.exec(context.Background(), c, cargs)
	}
	a.groupUsage(a.stdout, g)
	return exitOK
}

func findGroup(name string) *group {
	for _, g := range groups {
		if g.name == name {
			return g
		}
	}
	return nil
}

func (a *app) mainUsage(w io.Writer) {
	fmt.Fprint(w, `Usage: durable [--database-url URL] [--schema NAME] COMMAND [ARGS] [--json]

Inspect and operate pgdurable: migrations, runs, events, functions.

Commands:
`)
	t := newTable()
	for _, g := range groups {
		if g.self != nil {
			t.row("  "+g.self.short(), g.self.summary)
			continue
		}
		for _, c := range g.verbs {
			t.row("  "+c.short(), c.summary)
		}
	}
	t.write(w)
	fmt.Fprint(w, `
Global flags (before the command):
  --database-url URL   Postgres URL (default $DATABASE_URL, else
                       postgres://postgres@127.0.0.1:5432/postgres)
  --schema NAME        schema of pgdurable's and River's tables (default "durable")

Every command takes --json (after the command): one JSON document on stdout.
Exit status: 0 on success, 1 on a runtime error, 2 on a usage error.
Run 'durable COMMAND --help' for a command's flags.
`)
}

func (a *app) groupUsage(w io.Writer, g *group) {
	fmt.Fprintf(w, "Usage: durable %s COMMAND [ARGS] [--json]\n\n%s.\n\nCommands:\n", g.name, capitalize(g.summary))
	t := newTable()
	for _, c := range g.verbs {
		t.row("  "+c.short(), c.summary)
	}
	t.write(w)
	fmt.Fprintf(w, "\nRun 'durable %s COMMAND --help' for a command's flags.\n", g.name)
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// call is one run of a command: the app, its flags and arguments.
type call struct {
	*app
	cmd  *cmd
	fs   *flag.FlagSet
	args []string
}

// parse parses the command's flags, which may come before, between or
// after its positional arguments, and returns the positional arguments:
// between min and max of them (max < 0: any number). On --help it prints
// the command's usage and returns errHelp.
func (c *call) parse(min, max int) ([]string, error) {
	var pos []string
	args := c.args
	for {
		if err := c.fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				c.usage(c.stdout)
				return nil, errHelp
			}
			return nil, usagef("%v", err)
		}
		args = c.fs.Args()
		if len(args) == 0 {
			break
		}
		// flag stops at the first positional argument; "--" ends the
		// flags for good.
		if n := len(c.args) - len(args); n > 0 && c.args[n-1] == "--" {
			pos = append(pos, args...)
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	switch {
	case len(pos) < min:
		if want := c.cmd.positionals(); len(want) > len(pos) {
			return nil, usagef("missing argument %s", want[len(pos)])
		}
		return nil, usagef("missing argument")
	case max >= 0 && len(pos) > max:
		return nil, usagef("unexpected argument %q", pos[max])
	}
	return pos, nil
}

// usage prints the command's usage and flags.
func (c *call) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: durable %s %s\n\n%s.\n\nFlags:\n", c.cmd.path, c.cmd.synopsis, capitalize(c.cmd.summary))
	t := newTable()
	c.fs.VisitAll(func(f *flag.Flag) {
		typ, help := flag.UnquoteUsage(f)
		name := "  --" + f.Name
		if typ != "" {
			name += " " + typ
		}
		switch _, err := strconv.Atoi(f.DefValue); {
		case f.DefValue == "" || f.DefValue == "false" || f.DefValue == "0":
		case err == nil:
			help += " (default " + f.DefValue + ")"
		default:
			help += fmt.Sprintf(" (default %q)", f.DefValue)
		}
		t.row(name, help)
	})
	t.write(w)
}
