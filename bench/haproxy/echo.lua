-- An echo service in HAProxy's Lua (a TCP applet, HAProxy 2.6), for
-- hio-bench: each message of HIO_ECHO_SIZE bytes (an environment variable;
-- HAProxy 2.6 passes no arguments to lua-load) is read whole and sent back,
-- until the peer closes.
local size = tonumber(os.getenv("HIO_ECHO_SIZE")) or 1024

core.register_service("echo", "tcp", function(applet)
  while true do
    local data = applet:receive(size)
    if data == nil or #data == 0 then
      return
    end
    applet:send(data)
  end
end)
