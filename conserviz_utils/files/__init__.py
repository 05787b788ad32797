"""Reading and writing the course's files safely: image decoding, the pre-resized image cache, atomic writes."""
