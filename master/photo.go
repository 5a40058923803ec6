package main

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	_ "image/png" // uploads may be PNG

	"golang.org/x/image/draw"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

// A profile photo is made as the original client made it before handing it
// to the network: cropped to its centred square and scaled down to at most
// photoEdge pixels a side, then stored and sent as a JPEG. The scaler is
// golang.org/x/image/draw's Catmull-Rom.
const (
	photoEdge    = 640
	photoQuality = 90
	// maxPhotoUpload bounds the upload itself.
	maxPhotoUpload = 10 << 20
	// maxPhotoPixels bounds what an upload may decode to (a small file
	// can declare a huge image): 16 megapixels, 64 MiB decoded at most.
	maxPhotoPixels = 16 << 20
)

// makeProfilePhoto turns an uploaded JPEG or PNG into the profile photo.
func makeProfilePhoto(upload []byte) ([]byte, error) {
	cfg, format, err := image.DecodeConfig(bytes.NewReader(upload))
	if err != nil || (format != "jpeg" && format != "png") {
		return nil, &inputError{apierror.ParameterInvalid, "the profile photo must be a JPEG or PNG image"}
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || cfg.Width*cfg.Height > maxPhotoPixels {
		return nil, &inputError{apierror.ParameterInvalid, fmt.Sprintf("the profile photo is %d×%d pixels; at most %d megapixels are taken", cfg.Width, cfg.Height, maxPhotoPixels>>20)}
	}
	src, _, err := image.Decode(bytes.NewReader(upload))
	if err != nil {
		return nil, &inputError{apierror.ParameterInvalid, "the profile photo could not be decoded: " + err.Error()}
	}
	b := src.Bounds()
	side := min(b.Dx(), b.Dy())
	crop := image.Rect(0, 0, side, side).Add(b.Min).Add(image.Pt((b.Dx()-side)/2, (b.Dy()-side)/2))
	edge := min(side, photoEdge)
	dst := image.NewRGBA(image.Rect(0, 0, edge, edge))
	// JPEG has no transparency: a transparent PNG lands on white.
	draw.Draw(dst, dst.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	draw.CatmullRom.Scale(dst, dst.Bounds(), src, crop, draw.Over, nil)
	var out bytes.Buffer
	if err := jpeg.Encode(&out, dst, &jpeg.Options{Quality: photoQuality}); err != nil {
		return nil, fmt.Errorf("encode the profile photo: %w", err)
	}
	return out.Bytes(), nil
}
