"""`slowfast-vgen play`: a world model played live in a local web page (aiohttp and a WebSocket, the page in
`static/`, offline). `session` is the episode, with nothing of the web in it; `server` the page's server;
`command` the command line. See docs/play.md."""
