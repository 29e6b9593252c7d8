// Package pull pulls an image or artifact with go-containerregistry's own client, as crane
// does (pkg/v1/remote), and reports what it got, for the drivers in cmd/.
package pull

import (
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Result is what a pull fetched, or why it failed.
type Result struct {
	// Digest is the manifest's digest, as the registry served it.
	Digest string `json:"digest,omitempty"`
	// Layers is the digest of each layer read in full (go-containerregistry checks each
	// blob against its digest while reading: pkg/v1/remote, remoteImageLayer.Compressed).
	Layers []string `json:"layers,omitempty"`
	// Bytes counts the config and layer bytes read.
	Bytes int64 `json:"bytes,omitempty"`
	// Error is go-containerregistry's error, when the pull failed.
	Error string `json:"error,omitempty"`
}

// Image pulls ref (manifest, config and every layer) with the options given, e.g.
// remote.WithAuth or remote.WithAuthFromKeychain. A reference on 127.0.0.1 or localhost
// is reached over plain http (name.Registry.Scheme).
func Image(ref string, options ...remote.Option) Result {
	parsed, err := name.ParseReference(ref)
	if err != nil {
		return Result{Error: fmt.Sprintf("parsing %q: %v", ref, err)}
	}
	img, err := remote.Image(parsed, options...)
	if err != nil {
		return Result{Error: err.Error()}
	}
	digest, err := img.Digest()
	if err != nil {
		return Result{Error: err.Error()}
	}
	result := Result{Digest: digest.String()}
	config, err := img.RawConfigFile()
	if err != nil {
		return Result{Error: err.Error()}
	}
	result.Bytes += int64(len(config))
	layers, err := img.Layers()
	if err != nil {
		return Result{Error: err.Error()}
	}
	for _, layer := range layers {
		d, err := layer.Digest()
		if err != nil {
			return Result{Error: err.Error()}
		}
		reader, err := layer.Compressed()
		if err != nil {
			return Result{Error: err.Error()}
		}
		n, err := io.Copy(io.Discard, reader)
		closeErr := reader.Close()
		if err == nil {
			err = closeErr
		}
		if err != nil {
			return Result{Error: fmt.Sprintf("reading layer %s: %v", d, err)}
		}
		result.Bytes += n
		result.Layers = append(result.Layers, d.String())
	}
	return result
}

// Basic is the authenticator for a user name and password, as a keyring hands them out.
func Basic(username, password string) authn.Authenticator {
	return authn.FromConfig(authn.AuthConfig{Username: username, Password: password})
}
