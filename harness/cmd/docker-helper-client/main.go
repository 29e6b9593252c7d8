// Command docker-helper-client runs a Docker credential helper through Docker's own helper
// client and go-containerregistry's keychains, and prints on stdout, as one JSON object,
// what each of them returned:
//
//   - client_get: github.com/docker/docker-credential-helpers v0.9.13 client/client.go Get,
//     through client.NewShellProgramFunc (the client docker/cli, containers/image (skopeo,
//     podman, buildah) use): the credentials, or the error it builds, which Get makes from
//     the helper's stdout alone (stderr goes to this process's stderr);
//   - helper_keychain: go-containerregistry v0.22.1 pkg/authn/keychain.go
//     NewKeychainFromHelper over that same client.Get: the authenticator it resolves to
//     (Anonymous whenever the helper fails: wrapper.ResolveContext drops the error);
//   - default_keychain: go-containerregistry's DefaultKeychain, crane's own
//     (pkg/crane/options.go): Docker's config.json (DOCKER_CONFIG or HOME), whose
//     credHelpers run the helper on PATH through docker/cli's nativeStore, which calls
//     client.Get too;
//   - pull (with --pull REF): REF pulled by go-containerregistry with DefaultKeychain.
//
// Usage: docker-helper-client --helper PATH --server SERVER_URL [--registry HOST] [--pull REF]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/docker/docker-credential-helpers/client"
	"github.com/docker/docker-credential-helpers/credentials"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"cloudsmith-access-token/harness/internal/pull"
)

// Get is what client.Get returned.
type Get struct {
	ServerURL string `json:"server_url,omitempty"`
	Username  string `json:"username,omitempty"`
	Secret    string `json:"secret,omitempty"`
	// Error is the error's text, as a program using the client would log it.
	Error string `json:"error,omitempty"`
	// NotFound: credentials.IsErrCredentialsNotFound(err), which docker/cli's nativeStore
	// turns into "no credentials" (an anonymous pull).
	NotFound bool `json:"not_found"`
	// MissingServerURL: credentials.IsCredentialsMissingServerURL(err).
	MissingServerURL bool `json:"missing_server_url"`
}

// Resolved is what a keychain resolved to.
type Resolved struct {
	// Anonymous: the keychain answered authn.Anonymous, so the client pulls anonymously.
	Anonymous bool   `json:"anonymous"`
	Username  string `json:"username,omitempty"`
	Password  string `json:"password,omitempty"`
	// Error is the keychain's error (Resolve or Authorization).
	Error string `json:"error,omitempty"`
	// HelperError is what client.Get returned to the keychain, which NewKeychainFromHelper
	// does not pass on.
	HelperError string `json:"helper_error,omitempty"`
}

// Report is the one JSON object printed.
type Report struct {
	ClientGet       Get          `json:"client_get"`
	HelperKeychain  *Resolved    `json:"helper_keychain,omitempty"`
	DefaultKeychain *Resolved    `json:"default_keychain,omitempty"`
	Pull            *pull.Result `json:"pull,omitempty"`
}

// shellHelper is an authn.Helper over Docker's helper client, recording its last error.
type shellHelper struct {
	program client.ProgramFunc
	err     error
}

func (h *shellHelper) Get(serverURL string) (string, string, error) {
	creds, err := client.Get(h.program, serverURL)
	h.err = err
	if err != nil {
		return "", "", err
	}
	return creds.Username, creds.Secret, nil
}

func resolve(keychain authn.Keychain, registry name.Registry) *Resolved {
	auth, err := keychain.Resolve(registry)
	if err != nil {
		return &Resolved{Error: err.Error()}
	}
	if auth == authn.Anonymous {
		return &Resolved{Anonymous: true}
	}
	config, err := authn.Authorization(context.Background(), auth)
	if err != nil {
		return &Resolved{Error: err.Error()}
	}
	return &Resolved{Username: config.Username, Password: config.Password}
}

func main() {
	helper := flag.String("helper", "", "the credential helper program (a path, or a name on PATH)")
	server := flag.String("server", "", "the server URL written to the helper's stdin")
	registryName := flag.String("registry", "", "the registry the keychains resolve (default: --server)")
	pullRef := flag.String("pull", "", "pull this reference with DefaultKeychain")
	flag.Parse()
	if *helper == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: docker-helper-client --helper PATH --server SERVER_URL [--registry HOST] [--pull REF]")
		os.Exit(2)
	}

	program := client.NewShellProgramFunc(*helper)
	var report Report
	creds, err := client.Get(program, *server)
	if err != nil {
		report.ClientGet = Get{
			Error:            err.Error(),
			NotFound:         credentials.IsErrCredentialsNotFound(err),
			MissingServerURL: credentials.IsCredentialsMissingServerURL(err),
		}
	} else {
		report.ClientGet = Get{ServerURL: creds.ServerURL, Username: creds.Username, Secret: creds.Secret}
	}

	host := *registryName
	if host == "" {
		host = *server
	}
	if registry, err := name.NewRegistry(host); err == nil {
		h := &shellHelper{program: program}
		report.HelperKeychain = resolve(authn.NewKeychainFromHelper(h), registry)
		if h.err != nil {
			report.HelperKeychain.HelperError = h.err.Error()
		}
		report.DefaultKeychain = resolve(authn.DefaultKeychain, registry)
	} else if *registryName != "" {
		fail(fmt.Errorf("--registry %q: %w", host, err))
	}
	if *pullRef != "" {
		result := pull.Image(*pullRef, remote.WithAuthFromKeychain(authn.DefaultKeychain))
		report.Pull = &result
	}
	if err := json.NewEncoder(os.Stdout).Encode(report); err != nil {
		fail(err)
	}
}

func fail(err error) {
	if err == nil {
		err = errors.New("unknown error")
	}
	fmt.Fprintf(os.Stderr, "docker-helper-client: %v\n", err)
	os.Exit(1)
}
