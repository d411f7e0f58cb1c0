%%--------------------------------------------------------------------
%% EMQX API double: emqx_message (apps/emqx/src/emqx_message.erl, 5.x).
%% The record layout is EMQX's: {message, Id, QoS, From, Flags, Headers,
%% Topic, Payload, Timestamp, Extra}; `extra' defaults to [] in 5.0-5.3 and
%% #{} from 5.4 (the double's mode decides).
%%--------------------------------------------------------------------
-module(emqx_message).

-export([make/2, make/3, make/4, make/6]).
-export([id/1, qos/1, from/1, topic/1, payload/1, timestamp/1, extra/1]).
-export([get_flag/2, get_flag/3, set_flag/2, set_flag/3, get_flags/1]).
-export([get_header/2, get_header/3, set_header/3, get_headers/1]).
-export([is_sys/1, is_expired/1, is_expired/2, update_expiry/1, to_map/1]).

-record(message, {id, qos = 0, from, flags = #{}, headers = #{}, topic, payload, timestamp, extra = #{}}).

make(Topic, Payload) -> make(undefined, Topic, Payload).
make(From, Topic, Payload) -> make(From, 0, Topic, Payload).
make(From, QoS, Topic, Payload) -> make(From, QoS, Topic, Payload, #{}, #{}).
make(From, QoS, Topic, Payload, Flags, Headers) when QoS >= 0, QoS =< 2 ->
    #message{
        id = emqx_guid:gen(),
        qos = QoS,
        from = From,
        flags = Flags,
        headers = Headers,
        topic = Topic,
        payload = iolist_to_binary(Payload),
        timestamp = erlang:system_time(millisecond),
        extra = emqx_double:extra_default()
    }.

id(#message{id = Id}) -> Id.
qos(#message{qos = Q}) -> Q.
from(#message{from = F}) -> F.
topic(#message{topic = T}) -> T.
payload(#message{payload = P}) -> P.
timestamp(#message{timestamp = Ts}) -> Ts.
extra(#message{extra = E}) -> E.

get_flag(Flag, Msg) -> get_flag(Flag, Msg, false).
get_flag(Flag, #message{flags = Flags}, Default) -> maps:get(Flag, Flags, Default).
set_flag(Flag, Msg) -> set_flag(Flag, true, Msg).
set_flag(Flag, Val, #message{flags = Flags} = Msg) -> Msg#message{flags = Flags#{Flag => Val}}.
get_flags(#message{flags = Flags}) -> Flags.

get_header(Hdr, Msg) -> get_header(Hdr, Msg, undefined).
get_header(Hdr, #message{headers = Headers}, Default) -> maps:get(Hdr, Headers, Default).
set_header(Hdr, Val, #message{headers = Headers} = Msg) -> Msg#message{headers = Headers#{Hdr => Val}}.
get_headers(#message{headers = H}) -> H.

is_sys(#message{flags = #{sys := true}}) -> true;
is_sys(#message{topic = <<"$SYS/", _/binary>>}) -> true;
is_sys(_) -> false.

%% 5.0-5.5 have is_expired/1, 5.6+ is_expired/2 (Msg, Zone); both check
%% Message-Expiry-Interval against the message's own timestamp.
is_expired(Msg) -> is_expired(Msg, default).
is_expired(#message{headers = #{properties := #{'Message-Expiry-Interval' := Interval}}, timestamp = CreatedAt}, _Zone) ->
    elapsed(CreatedAt) > timer:seconds(Interval);
is_expired(_Msg, _Zone) ->
    false.

update_expiry(#message{headers = #{properties := #{'Message-Expiry-Interval' := Interval} = Props}, timestamp = CreatedAt} = Msg) ->
    Elapsed = max(0, elapsed(CreatedAt)),
    Left = max(1, Interval - (Elapsed div 1000)),
    set_header(properties, Props#{'Message-Expiry-Interval' => Left}, Msg);
update_expiry(Msg) ->
    Msg.

to_map(#message{} = M) ->
    #{id => M#message.id, qos => M#message.qos, from => M#message.from, flags => M#message.flags,
      headers => M#message.headers, topic => M#message.topic, payload => M#message.payload,
      timestamp => M#message.timestamp, extra => M#message.extra}.

elapsed(Since) -> erlang:system_time(millisecond) - Since.
