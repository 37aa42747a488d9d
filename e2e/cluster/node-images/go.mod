module roundhouse.dev/nodeimages

go 1.26
