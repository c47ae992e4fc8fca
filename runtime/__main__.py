from picogpt.runtime.cli import main

main()
