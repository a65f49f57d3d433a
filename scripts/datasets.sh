# The real datasets the demo and the benchmarks train on, from Debian packages (fortunes,
# dataset-fashion-mnist), put under a --data_dir; sourced, not run.
#   prepare_datasets DATA_DIR   writes DATA_DIR/fortunes.txt and DATA_DIR/fashion-mnist/ once
# Datasets must live under --data_dir (symlinks leading out are refused): Fashion-MNIST is copied.
prepare_datasets() {
  local data=$1
  mkdir -p "$data"
  [ -s "$data/fortunes.txt" ] || bash scripts/fortunes_corpus.sh "$data/fortunes.txt"
  if [ ! -s "$data/fashion-mnist/train-images-idx3-ubyte.gz" ]; then
    mkdir -p "$data/fashion-mnist"
    cp /usr/share/datasets/fashion-mnist/*-ubyte.gz "$data/fashion-mnist/"
  fi
}
