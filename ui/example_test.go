package ui_test

import (
	"context"
	"crypto/subtle"
	"log"
	"net/http"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/ui"
)

// The run browser mounted on an app's own mux under /admin/durable, behind
// HTTP basic auth (it has no login of its own), with payloads hidden until
// asked for.
func ExampleNewHandler() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	client, err := durable.NewClient(pool, &durable.Config{}) // the app's client (its functions, if any)
	if err != nil {
		log.Fatal(err)
	}
	runs, err := ui.NewHandler(client, &ui.Options{Prefix: "/admin/durable", HidePayloads: true})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/admin/durable/", basicAuth(runs, "ops", os.Getenv("DURABLE_UI_PASSWORD")))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("the app")) })
	log.Fatal(http.ListenAndServe(":8080", mux))
}

// basicAuth lets through the requests with this user and password.
func basicAuth(next http.Handler, user, password string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || password == "" ||
			subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 ||
			subtle.ConstantTimeCompare([]byte(p), []byte(password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="durable", charset="UTF-8"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}
