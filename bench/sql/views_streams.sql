SELECT * FROM eventq.streams;
