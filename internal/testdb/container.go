package testdb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

const (
	// containerImage is the Postgres image started when no server is found.
	containerImage = "postgres:16-alpine"
	// dockerProbeTimeout bounds the check that Docker is reachable, so that
	// a machine without Docker gets its error at once.
	dockerProbeTimeout = 2 * time.Second
	// containerStartTimeout bounds pulling the image and starting Postgres.
	containerStartTimeout = 3 * time.Minute
)

func init() {
	container = startContainer
}

// startContainer starts a throwaway Postgres through testcontainers-go and
// returns its URL. The container lives as long as the process: nothing
// terminates it, and testcontainers' reaper (ryuk) removes it once the
// process exits.
func startContainer(ctx context.Context) (string, error) {
	if err := dockerAvailable(ctx); err != nil {
		return "", fmt.Errorf("testcontainers: Docker is not available: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, containerStartTimeout)
	defer cancel()
	pg, err := tcpostgres.Run(ctx, containerImage,
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithDatabase("postgres"),
		testcontainers.WithEnv(map[string]string{"POSTGRES_HOST_AUTH_METHOD": "trust"}),
		tcpostgres.BasicWaitStrategies(),
	)
	if err != nil {
		if pg != nil {
			_ = testcontainers.TerminateContainer(pg)
		}
		return "", fmt.Errorf("testcontainers: start %s: %w", containerImage, err)
	}
	url, err := pg.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		_ = testcontainers.TerminateContainer(pg)
		return "", fmt.Errorf("testcontainers: connection string: %w", err)
	}
	return url, nil
}

// dockerAvailable reports, within dockerProbeTimeout, whether a Docker
// daemon answers. The probe runs in its own goroutine and recovers from
// panics, so that neither a library that ignores its context nor one that
// panics when no Docker host is configured can hang or crash the caller.
func dockerAvailable(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, dockerProbeTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("%v", r)
			}
		}()
		cli, err := testcontainers.NewDockerClientWithOpts(ctx)
		if err != nil {
			done <- err
			return
		}
		defer cli.Close()
		// NewDockerClientWithOpts may fall back to an unchecked client, so
		// ask the daemon directly.
		_, err = cli.Ping(ctx, client.PingOptions{})
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return errors.New("no answer from the Docker daemon within " + dockerProbeTimeout.String())
	}
}
