from picogpt.train.cli import main

main()
