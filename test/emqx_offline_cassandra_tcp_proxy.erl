%%--------------------------------------------------------------------
%% A TCP proxy for fault tests: the store connects to Cassandra through it,
%% and a test "stops Cassandra" by cutting every connection and refusing
%% new ones, then "starts" it again - without touching the real node that
%% other tests share.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_tcp_proxy).

-export([start/1, port/1, cut/1, restore/1, stop/1, delay/2]).

-record(st, {upstream_port, port, listener, conns = [], delay_ms = 0}).

%% @doc Proxies a local port (returned by port/1) to 127.0.0.1:UpstreamPort.
start(UpstreamPort) ->
    Caller = self(),
    Pid = spawn(fun() -> init(Caller, UpstreamPort) end),
    receive
        {Pid, started} -> {ok, Pid}
    after 5000 -> {error, timeout}
    end.

port(Pid) -> call(Pid, port).
%% @doc Closes the listener and every proxied connection.
cut(Pid) -> call(Pid, cut).
%% @doc Listens again on the same port.
restore(Pid) -> call(Pid, restore).
stop(Pid) -> call(Pid, stop).
%% @doc Holds every chunk from Cassandra this long before passing it on (a
%% slow Cassandra); 0 turns it off. Applies to connections made from now on
%% and to the ones open.
delay(Pid, Ms) -> call(Pid, {delay, Ms}).

call(Pid, Req) ->
    Ref = make_ref(),
    Pid ! {call, self(), Ref, Req},
    receive
        {Ref, Reply} -> Reply
    after 5000 -> {error, timeout}
    end.

init(Caller, UpstreamPort) ->
    process_flag(trap_exit, true),
    {ok, L} = listen(0),
    {ok, Port} = inet:port(L),
    Caller ! {self(), started},
    loop(accepting(#st{upstream_port = UpstreamPort, port = Port, listener = L})).

listen(Port) ->
    gen_tcp:listen(Port, [binary, {active, false}, {reuseaddr, true}, {ip, {127, 0, 0, 1}}]).

%% One acceptor process at a time; it reports each connection.
accepting(#st{listener = L} = St) ->
    Self = self(),
    spawn_link(fun() -> acceptor(Self, L) end),
    St.

acceptor(Server, L) ->
    case gen_tcp:accept(L) of
        {ok, Sock} ->
            ok = gen_tcp:controlling_process(Sock, Server),
            Server ! {accepted, Sock},
            acceptor(Server, L);
        {error, _} ->
            ok
    end.

loop(St) ->
    receive
        {accepted, Client} ->
            case gen_tcp:connect({127, 0, 0, 1}, St#st.upstream_port, [binary, {active, true}]) of
                {ok, Up} ->
                    Delay = St#st.delay_ms,
                    Pipe = spawn_link(fun() -> put(delay_ms, Delay), pipe(Client, Up) end),
                    ok = gen_tcp:controlling_process(Client, Pipe),
                    ok = gen_tcp:controlling_process(Up, Pipe),
                    Pipe ! go,
                    loop(St#st{conns = [Pipe | St#st.conns]});
                {error, _} ->
                    gen_tcp:close(Client),
                    loop(St)
            end;
        {call, From, Ref, {delay, Ms}} ->
            [P ! {delay_ms, Ms} || P <- St#st.conns],
            From ! {Ref, ok},
            loop(St#st{delay_ms = Ms});
        {call, From, Ref, port} ->
            From ! {Ref, St#st.port},
            loop(St);
        {call, From, Ref, cut} ->
            catch gen_tcp:close(St#st.listener),
            [exit(P, cut) || P <- St#st.conns],
            From ! {Ref, ok},
            loop(St#st{listener = undefined, conns = []});
        {call, From, Ref, restore} ->
            {ok, L} = listen(St#st.port),
            From ! {Ref, ok},
            loop(accepting(St#st{listener = L}));
        {call, From, Ref, stop} ->
            catch gen_tcp:close(St#st.listener),
            [exit(P, kill) || P <- St#st.conns],
            From ! {Ref, ok};
        {'EXIT', Pid, _} ->
            loop(St#st{conns = lists:delete(Pid, St#st.conns)})
    end.

pipe(Client, Up) ->
    receive
        go -> ok
    end,
    ok = inet:setopts(Client, [{active, true}]),
    pipe_loop(Client, Up).

pipe_loop(Client, Up) ->
    receive
        {tcp, Client, Data} ->
            forward(Client, Up, Up, Data);
        {tcp, Up, Data} ->
            case get(delay_ms) of
                D when is_integer(D), D > 0 -> timer:sleep(D);
                _ -> ok
            end,
            forward(Client, Up, Client, Data);
        {delay_ms, Ms} ->
            put(delay_ms, Ms),
            pipe_loop(Client, Up);
        {tcp_closed, _} ->
            gen_tcp:close(Client),
            gen_tcp:close(Up)
    end.

%% Sends Data to To; a side that has gone away closes both, as a real
%% network connection would end.
forward(Client, Up, To, Data) ->
    case gen_tcp:send(To, Data) of
        ok ->
            pipe_loop(Client, Up);
        {error, _} ->
            gen_tcp:close(Client),
            gen_tcp:close(Up)
    end.
