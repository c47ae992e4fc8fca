from picogpt.bench.cli import main

main()
