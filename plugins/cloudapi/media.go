package cloudapi

import "sync"

// mediaCache maps our media ids (files in the shared media directory) to
// the Cloud API media ids they were uploaded as, so a file sent many times
// is uploaded once per plugin process.
type mediaCache struct {
	mu sync.Mutex
	m  map[string]string
}

func newMediaCache() *mediaCache { return &mediaCache{m: map[string]string{}} }
